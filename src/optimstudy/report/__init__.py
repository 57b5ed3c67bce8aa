"""`optimstudy report`: the figures (scripts in the analysis folder, drawn with `plotting`), the
page, and their attachments to each sweep's parent run. Never imports torch."""
