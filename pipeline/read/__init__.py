"""Read: inputs → read units → decoded frames (sources, plan, decode, the Ray Data datasource)."""
