"""Pieces as audio and pictures, used by compose and record alike."""
