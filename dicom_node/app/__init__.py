"""The application: the node's lifecycle, the HTTP API and the command line."""
