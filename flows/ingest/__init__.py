"""Real sources in: bank statements and acquirer reports turned into contract records.

Each format module is a pure function from a file's bytes to Statements (statement.py);
records.py turns Statements into contract records, publish.py puts them on a topic.
"""
