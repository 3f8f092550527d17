enum _PlaceholderQEMUProvider {}
