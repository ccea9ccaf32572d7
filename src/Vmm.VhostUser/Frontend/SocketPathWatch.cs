namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Watches the directory of a back-end's socket path for that name being created (inotify,
/// through <see cref="FileSystemWatcher"/>), so that a device waiting to reconnect connects the
/// moment a back-end binds its socket again instead of at its next backoff tick. A back-end that
/// restarts unlinks its stale socket and binds a new one (IN_CREATE), or binds under another
/// name and renames it (IN_MOVED_TO): both count. The callback runs on the
/// watcher's thread and must only post a message.
/// </summary>
internal sealed class SocketPathWatch : IDisposable
{
    private readonly FileSystemWatcher _watcher;

    private SocketPathWatch(FileSystemWatcher watcher) => _watcher = watcher;

    /// <summary>A watch on <paramref name="socketPath"/>, or null when its directory cannot be watched (missing, no permission, no inotify instance left).</summary>
    public static SocketPathWatch? TryStart(string socketPath, Action appeared)
    {
        string full = Path.GetFullPath(socketPath);
        string? directory = Path.GetDirectoryName(full);
        if (directory is null || !Directory.Exists(directory))
        {
            return null;
        }

        FileSystemWatcher? watcher = null;
        try
        {
            watcher = new FileSystemWatcher(directory, Path.GetFileName(full))
            {
                NotifyFilter = NotifyFilters.FileName,
                IncludeSubdirectories = false,
            };
            watcher.Created += (_, _) => appeared();
            watcher.Renamed += (_, _) => appeared();
            watcher.EnableRaisingEvents = true;
            var watch = new SocketPathWatch(watcher);
            watcher = null;
            return watch;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            return null;
        }
        finally
        {
            watcher?.Dispose();
        }
    }

    public void Dispose() => _watcher.Dispose();
}
