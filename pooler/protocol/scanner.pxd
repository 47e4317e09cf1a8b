# C types for scanner.py where Cython compiles it (hatch_build.py; the .py stays the source,
# run as it is without a compiler). Module globals declared here are not visible to Python.
import cython

cdef object _LENGTH

cdef class MessageScanner:
    cdef public frozenset wanted
    cdef Py_ssize_t _need
    cdef bytearray _header
    cdef bytearray _body
    cdef int _type

    @cython.locals(i=Py_ssize_t, n=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t,
                   msg_type=int, take=Py_ssize_t, missing=Py_ssize_t, body_len=Py_ssize_t,
                   max_wanted=Py_ssize_t, out=list, wanted=frozenset)
    cpdef list feed(self, bytes data)
