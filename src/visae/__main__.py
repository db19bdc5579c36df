from visae.cli import app

app()
