enum _PlaceholderHostAgent {}
