"""From MIDI files to the prepared Parquet windows: the note contract, instrument rows, the encoding of
a note as numbers, segments, datasets and their download (the validate, download and prepare stages)."""
