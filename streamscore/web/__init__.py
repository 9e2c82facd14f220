"""HTTP pages for people: the console for sales and marketing ops."""
