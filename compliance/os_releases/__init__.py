"""OS release data for the compliance rules `os_supported` and `os_updates`.

Which versions each OS line has had and when (from the macadmins SOFA feed for Apple, or from a file or
the API for any platform), and the oldest version each vendor still supports.
"""
