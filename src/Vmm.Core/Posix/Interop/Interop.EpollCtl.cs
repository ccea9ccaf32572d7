using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int EPOLL_CTL_ADD = 1;
        internal const int EPOLL_CTL_DEL = 2;

        internal const uint EPOLLIN = 0x001;

        /// <summary>epoll_ctl(2); <c>ev</c> is one struct epoll_event in the layout of <see cref="EpollEvent"/>, null for EPOLL_CTL_DEL.</summary>
        [LibraryImport(Libraries.Libc, EntryPoint = "epoll_ctl", SetLastError = true)]
        internal static unsafe partial int EpollCtl(int epfd, int op, int fd, byte* ev);
    }
}
