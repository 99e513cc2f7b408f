from offloader.cli import entry

entry()
