"""The fault suite (issue 13): every long stage killed with SIGKILL at several points and rerun,
and a table of hostile inputs, each expected to stop with a named error."""
