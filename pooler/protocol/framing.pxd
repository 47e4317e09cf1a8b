# C types for framing.py where Cython compiles it (hatch_build.py; the .py stays the source,
# run as it is without a compiler). Module globals declared here are not visible to Python.
import cython

cdef object _u32_from

cdef class MessageSplitter:
    cdef frozenset _always
    cdef tuple _limits
    cdef Py_ssize_t _pos
    cdef int _stream_type
    cdef public object buffer
    cdef public Py_ssize_t head_size
    cdef public Py_ssize_t max_buffered
    cdef public Py_ssize_t max_length
    cdef public Py_ssize_t remaining

    cpdef bint at_boundary(self)
    @cython.locals(n=Py_ssize_t)
    cpdef Py_ssize_t lone(self, bytes data)
    cpdef forget_reported(self)
    @cython.locals(pos=Py_ssize_t)
    cpdef feed(self, data)
