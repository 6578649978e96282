"""Host-side (CPython only) tools for MicroPython boards: the bundle builder
(``surge firmware build``).  Never copied to a board."""
