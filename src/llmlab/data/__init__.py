"""The data stage: crawl web pages and clean them into a table of documents."""
