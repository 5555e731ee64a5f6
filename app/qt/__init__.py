"""The desktop workstation's Qt layer: widgets that only view and drive the Qt-free controllers in
app.core (napari's _qt split). Nothing here talks to the rig except through a RigSession's
non-blocking getters and operator actions."""
