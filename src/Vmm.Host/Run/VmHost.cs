using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Vmm.Host.Cli;
using Vmm.VhostUser.Hosting;

namespace Vmm.Host.Run;

/// <summary>
/// The actor side of a <c>vmm run</c> (and <c>vmm demo</c>) VM, composed as an embedding host
/// composes it (docs/embedding.md): a generic host with Akka.Hosting, <c>AddManagedVmm</c> and
/// <c>WithManagedVmm</c>, so that the same tree runs everywhere: <c>/user/vm</c> (the VmActor),
/// its interrupt controller and one supervisor per <c>--vhost-user</c> device.
/// </summary>
/// <remarks>
/// Stdout carries the workloads' results, so everything else goes to stderr: Akka's log through
/// <c>ILogger</c> (errors only: a device's connection news are one line each from
/// <see cref="VhostUserConnectionLog"/>). The host's own Ctrl-C handling is replaced by the
/// command's (<see cref="CommandLifetime"/>).
/// </remarks>
public sealed class VmHost : IDisposable
{
    private readonly IHost _host;

    private VmHost(IHost host, IActorRef? connectionLog)
    {
        _host = host;
        ConnectionLog = connectionLog;
        Vmm = host.Services.GetRequiredService<IManagedVmm>();
        System = host.Services.GetRequiredService<ActorSystem>();
    }

    /// <summary>The VM as a host sees it.</summary>
    public IManagedVmm Vmm { get; }

    public ActorSystem System { get; }

    /// <summary>The <see cref="VhostUserConnectionLog"/>, when there are vhost-user devices.</summary>
    public IActorRef? ConnectionLog { get; }

    /// <summary>Starts the host with <paramref name="devices"/> attached to the VM; connection news go to <paramref name="error"/>.</summary>
    public static VmHost Start(IReadOnlyList<IHostedDeviceSource> devices, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(devices);
        ArgumentNullException.ThrowIfNull(error);
        HostApplicationBuilder builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(
            new HostApplicationBuilderSettings { DisableDefaults = true, ApplicationName = "vmm" });
        builder.Logging.ClearProviders()
            .SetMinimumLevel(LogLevel.Error)
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.ColorBehavior = LoggerColorBehavior.Disabled;
            })
            .Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.Services.AddSingleton<IHostLifetime, CommandLifetime>();
        IActorRef? connectionLog = null;
        builder.Services
            .AddManagedVmm()
            .AddAkka("vmm", (akka, _) => akka
                // The command owns SIGTERM (its workload ends cleanly, the guest resets its devices,
                // then the host stops): Akka must not start its own shutdown on the same signal,
                // under devices the guest is still resetting. stdout is the workload's results only:
                // Akka's fallback logger, which prints to stdout while the loggers start or stop,
                // is off (what matters reaches stderr through the logger factory).
                .AddHocon(
                    "akka.log-dead-letters = off\nakka.log-dead-letters-during-shutdown = off\nakka.coordinated-shutdown.run-by-clr-shutdown-hook = off\nakka.stdout-loglevel = OFF",
                    HoconAddMode.Prepend)
                .ConfigureLoggers(l =>
                {
                    l.LogLevel = Akka.Event.LogLevel.WarningLevel;
                    l.ClearLoggers();
                    l.AddLoggerFactory();
                })
                .WithManagedVmm(vm =>
                {
                    foreach (IHostedDeviceSource device in devices)
                    {
                        device.Configure(vm);
                    }
                })
                .WithActors((system, _) =>
                {
                    if (devices.Count > 0)
                    {
                        connectionLog = VhostUserConnectionLogging.Start(system, devices.ToDictionary(d => d.Name, d => d.Where), error);
                    }
                }));

        IHost host = builder.Build();
        try
        {
            host.StartAsync().GetAwaiter().GetResult();
            return new VmHost(host, connectionLog);
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    /// <summary>Akka's coordinated shutdown stops the VM actor, its devices and their connections.</summary>
    public void Dispose()
    {
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            _host.StopAsync(stop.Token).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            // Stopping took too long: the process is about to end anyway.
        }

        _host.Dispose();
    }

    /// <summary>The command owns SIGINT and SIGTERM (a workload ends cleanly on them): the host does not take them.</summary>
    private sealed class CommandLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
