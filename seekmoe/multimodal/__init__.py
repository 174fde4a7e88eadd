"""Images and speech: the encoders, media parsing, the media data sets, text to speech."""
