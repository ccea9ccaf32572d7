using System.Globalization;
using Akka.Actor;
using Vmm.Core.Machine;
using Vmm.VhostUser.Frontend;
using Vmm.Host.Cli;

namespace Vmm.Host.Run;

/// <summary>
/// Writes one line on stderr for each connection loss, recovery and give-up of the VM's
/// vhost-user devices, as their supervisors publish them on the event stream.
/// </summary>
public sealed class VhostUserConnectionLog : ReceiveActor
{
    private readonly IReadOnlyDictionary<string, string> _sockets;
    private readonly TextWriter _error;
    private readonly HashSet<string> _attached = [];

    public VhostUserConnectionLog(IReadOnlyDictionary<string, string> sockets, TextWriter error)
    {
        _sockets = sockets;
        _error = error;
        Receive<DeviceConnectionLost>(HandleLost);
        Receive<DeviceConnectionRestored>(HandleRestored);
        Receive<DeviceSocketAppeared>(m => Write(m.Name, "socket is back; reconnecting now."));
        Receive<DeviceFailed>(HandleFailed);
        Receive<DeviceRecovered>(m => Write(m.Name, "device works again after the guest's reset."));
        Receive<DeviceAttached>(m => _attached.Add(m.Name));
    }

    /// <param name="sockets">Supervisor name to socket path, for the messages.</param>
    /// <param name="error">Where the lines go (stderr).</param>
    public static Props Props(IReadOnlyDictionary<string, string> sockets, TextWriter error) =>
        Akka.Actor.Props.Create(() => new VhostUserConnectionLog(sockets, error));

    private void HandleLost(DeviceConnectionLost m) =>
        Write(m.Name, string.Create(
            CultureInfo.InvariantCulture,
            $"connection lost ({m.Reason.TrimEnd('.')}); reconnecting in {(int)m.Delay.TotalMilliseconds} ms (attempt {m.Attempt})."));

    private void HandleRestored(DeviceConnectionRestored m) =>
        Write(m.Name, string.Create(CultureInfo.InvariantCulture, $"connection restored after {m.Attempts} attempt(s); rings resumed."));

    private void HandleFailed(DeviceFailed m)
    {
        // A device that fails before it is attached is reported by the command's own error.
        if (_sockets.ContainsKey(m.Name) && _attached.Contains(m.Name))
        {
            Write(m.Name, $"device gave up and needs a reset: {m.Reason.TrimEnd('.')}.");
        }
    }

    private void Write(string name, string text)
    {
        string where = _sockets.TryGetValue(name, out string? socket) ? $"{name} ({socket})" : name;
        _error.WriteLine($"vmm: vhost-user {where}: {OneSentence.Of(text)}");
        _error.Flush();
    }


    /// <summary>The device <paramref name="Name"/> is connected and on the bus: its failures are news from now on.</summary>
    public sealed record DeviceAttached(string Name);
}

/// <summary>Starts a <see cref="VhostUserConnectionLog"/>.</summary>
public static class VhostUserConnectionLogging
{
    /// <summary>Starts the log and subscribes it; it lives as long as <paramref name="system"/>.</summary>
    public static IActorRef Start(ActorSystem system, IReadOnlyDictionary<string, string> sockets, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(system);
        IActorRef log = system.ActorOf(VhostUserConnectionLog.Props(sockets, error), "vhost-user-log");
        system.EventStream.Subscribe(log, typeof(DeviceConnectionLost));
        system.EventStream.Subscribe(log, typeof(DeviceConnectionRestored));
        system.EventStream.Subscribe(log, typeof(DeviceSocketAppeared));
        system.EventStream.Subscribe(log, typeof(DeviceFailed));
        system.EventStream.Subscribe(log, typeof(DeviceRecovered));
        return log;
    }
}
