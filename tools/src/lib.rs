//! The pbkv tools.
