enum _PlaceholderAgentClient {}
