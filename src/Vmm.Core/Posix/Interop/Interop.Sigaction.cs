using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int SIGBUS = 7;
        internal const int SA_SIGINFO = 0x4;
        internal const nint SIG_IGN = 1;

        /// <summary>
        /// glibc's struct sigaction on Linux x86-64 and AArch64: the handler, a 1024-bit
        /// sigset_t, the flags and the restorer (152 bytes; checked by a layout test).
        /// </summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct SigAction
        {
            public nint Handler;
            public fixed ulong Mask[16];
            public int Flags;
            public nint Restorer;
        }

        [LibraryImport(Libraries.Libc, EntryPoint = "sigaction", SetLastError = true)]
        internal static unsafe partial int Sigaction(int signal, SigAction* action, SigAction* previous);
    }
}
