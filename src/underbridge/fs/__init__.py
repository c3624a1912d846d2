"""Storage: the ubfs on-disk format read from Python (ubfs.py), and the storage stack of
guest servers, a RAM disk and the file-system server, started on a kernel (storage.py)."""
