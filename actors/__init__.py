"""Ray actors: thin shells that host core objects and move messages (see DESIGN.md, "Actors").

The Supervisor and Agent actors arrive with the runtime issue; nothing here imports them yet.
"""
