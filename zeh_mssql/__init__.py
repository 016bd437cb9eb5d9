"""zeh-mssql."""
