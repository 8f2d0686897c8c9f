"""What users run: make demo, dev, bench, soak, element and profile. Thin: they call the layers below."""
