using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const short POLLIN = 0x001;
        internal const short POLLOUT = 0x004;
        internal const short POLLERR = 0x008;
        internal const short POLLHUP = 0x010;

        [StructLayout(LayoutKind.Sequential)]
        internal struct PollFd
        {
            public int Fd;
            public short Events;
            public short ReturnedEvents;
        }

        [LibraryImport(Libraries.Libc, EntryPoint = "poll", SetLastError = true)]
        internal static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);
    }
}
