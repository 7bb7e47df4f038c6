"""Your own script as a job: your loop, a Hugging Face Trainer or a Lightning fit, served to notebooks from the process that trains it."""
