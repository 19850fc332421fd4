"""Query/Retrieve: the Q/R SCP over what the node holds, and the Q/R client that pulls from a PACS."""
