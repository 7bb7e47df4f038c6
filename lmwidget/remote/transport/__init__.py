"""The signed, encrypted channel between a job and a notebook."""
