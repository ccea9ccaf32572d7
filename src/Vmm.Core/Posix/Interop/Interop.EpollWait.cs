using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        /// <summary>epoll_wait(2); <c>events</c> has room for <c>maxEvents</c> struct epoll_event (<see cref="EpollEvent.Size"/> bytes each).</summary>
        [LibraryImport(Libraries.Libc, EntryPoint = "epoll_wait", SetLastError = true)]
        internal static unsafe partial int EpollWait(int epfd, byte* events, int maxEvents, int timeoutMilliseconds);
    }
}
