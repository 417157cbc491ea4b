//! Messages from the agent to the proxy's control socket.
