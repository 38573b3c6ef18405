//! pbkv roles: view service, replica, client.
