using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static class Errno
    {
        internal const int EPERM = 1;
        internal const int ENOENT = 2;
        internal const int EINTR = 4;
        internal const int EIO = 5;
        internal const int EBADF = 9;
        internal const int EAGAIN = 11;
        internal const int ENOMEM = 12;
        internal const int EACCES = 13;
        internal const int EBUSY = 16;
        internal const int EEXIST = 17;
        internal const int EINVAL = 22;
        internal const int ENOTTY = 25;
        internal const int EPIPE = 32;
        internal const int ENOSYS = 38;
        internal const int ELOOP = 40;
        internal const int EOPNOTSUPP = 95;
    }

    internal static int LastErrno => Marshal.GetLastPInvokeError();

    internal static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno) + $" (errno {errno})";
}
