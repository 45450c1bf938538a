/*
 * A stand-in for Windows' bcryptprimitives.dll, for running the Windows
 * build under Debian's wine 8, which has no such DLL.
 *
 * Why: Rust's standard library (1.78 and later) imports ProcessPrng from
 * bcryptprimitives.dll to seed HashMap's keys, with no fallback, so a Rust
 * .exe does not even start where the DLL is missing. Wine gained its own
 * bcryptprimitives.dll only after 8.0; Debian 12 ships 8.0 and no package
 * of it carries the DLL, and CI can reach no other source of wine. Put
 * beside the .exe, this file is found first (a program's own directory
 * leads the DLL search order).
 *
 * ProcessPrng is documented to always succeed and return TRUE. Here it
 * fills the buffer from RtlGenRandom (advapi32's SystemFunction036, which
 * wine backs with the host's random source), in pieces, since that takes a
 * 32-bit length.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *          bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            /* Cannot happen under wine; a caller that relies on success
             * must not go on with a buffer that is not random. */
            ExitProcess(3);
        data += n;
        len -= n;
    }
    return TRUE;
}
