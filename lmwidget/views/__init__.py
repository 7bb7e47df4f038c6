"""What a notebook shows: the dashboard, its charts and panels, compare, summary and export."""
