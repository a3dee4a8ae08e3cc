"""From a trained model to MIDI files: one generation path for any number of rows, prompts and kept
parts, shipped models, and the writing of the files (the sample stage, `dmc generate`)."""
