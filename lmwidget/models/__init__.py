"""Models: lmwidget's GPT and LSTM, Hugging Face models, and model directories checked before loading."""
