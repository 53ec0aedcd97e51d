"""The requester side: SDK, `xgate check`, subjects files. Holds the BFV secret key; talks HTTPS to the gateway."""
