using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>Signals to other processes (kill(2)); .NET's Process offers only SIGKILL.</summary>
public static class ProcessSignals
{
    /// <summary>Sends SIGTERM to <paramref name="pid"/>: returns false when it no longer exists.</summary>
    public static bool Terminate(int pid)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pid);
        if (Syscall.kill(pid, Signum.SIGTERM) == 0)
        {
            return true;
        }

        Errno errno = Stdlib.GetLastError();
        return errno == Errno.ESRCH ? false : throw new PosixException("kill", (int)errno);
    }
}
