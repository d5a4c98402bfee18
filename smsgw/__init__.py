"""smsgw: send and receive SMS for a web application through an Android phone running Termux."""

__version__ = "0.1.0"
