"""surge demo: a broker, a gateway and a small fleet on one machine."""
