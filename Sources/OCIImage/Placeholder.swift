enum _OCIImagePlaceholder {}
