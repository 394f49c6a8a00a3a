"""Click commands, one module per area; registered in ctrbench.cli."""
