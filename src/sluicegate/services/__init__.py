"""The seeds' surfaces, one module each, built on the streaming framework, security and the engines."""
