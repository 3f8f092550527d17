enum _PlaceholderHostNetwork {}
