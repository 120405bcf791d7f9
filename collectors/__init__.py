"""What is happening: sources -> samples -> store -> diagnosis. Never imports Textual."""
