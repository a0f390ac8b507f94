"""MedSynth desktop app: all Qt code lives here and drives engine/ through jobs and events."""
