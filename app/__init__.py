"""The workstation: Qt widgets in app.qt, Qt-free controllers in app.core, commands in app.cli."""
